// swift-tools-version:5.9
import PackageDescription

// CTBKit: the runtime-free core of the iOS demo (tokenizer, manifest, heads, runner) plus a CoreML
// backend compiled only where CoreML exists. `swift test` runs the golden tests on macOS or Linux.
let package = Package(
    name: "CTBKit",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "CTBKit", targets: ["CTBKit"]),
    ],
    targets: [
        .target(name: "CTBKit"),
        .testTarget(name: "CTBKitTests", dependencies: ["CTBKit"]),
    ]
)
