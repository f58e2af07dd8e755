// swift-tools-version:5.9
import PackageDescription

// CTBKit: the runtime-free core of the iOS demo (tokenizer, manifest, heads, runner, bundle
// installer, prediction controller) plus a CoreML backend compiled only where CoreML exists; no
// dependency. `swift test` runs its golden tests on macOS or Linux.
//
// On Apple platforms the package adds ONNX Runtime (for `target onnx` bundles) in separate targets,
// so that CTBKit itself stays dependency-free:
//   CTBKitOnnx      OnnxRuntimeBackend and the choice of backend by the manifest's target
//   ctb-predict     `swift run ctb-predict BUNDLE TEXT...`: one JSON line per text, as `ctb-mobile predict`
//   (CTBKitTests gains ParityTests: golden.json through the real runtimes, updateBranch on them)
// ONNX Runtime's Swift package ships Apple binaries only (an xcframework), so Linux leaves these out.
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

#if !os(Linux)
// 1.24.2: the newest tag of the Swift package; the toolchain's Python onnxruntime is 1.32.0, which
// writes the same opset 18 programs (see README, "ONNX Runtime version").
package.dependencies.append(
    .package(url: "https://github.com/microsoft/onnxruntime-swift-package-manager", exact: "1.24.2")
)
package.products += [
    .library(name: "CTBKitOnnx", targets: ["CTBKitOnnx"]),
    .executable(name: "ctb-predict", targets: ["ctb-predict"]),
]
package.targets += [
    .target(name: "CTBKitOnnx", dependencies: [
        "CTBKit",
        .product(name: "onnxruntime", package: "onnxruntime-swift-package-manager"),
    ]),
    .executableTarget(name: "ctb-predict", dependencies: ["CTBKit", "CTBKitOnnx"]),
]
// the parity tests (Tests/CTBKitTests/ParityTests.swift, `#if canImport(CTBKitOnnx)`) run golden.json
// through the real runtimes here
for target in package.targets where target.name == "CTBKitTests" {
    target.dependencies.append("CTBKitOnnx")
}
#endif
