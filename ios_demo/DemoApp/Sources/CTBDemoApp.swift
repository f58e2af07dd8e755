import SwiftUI

@main
struct CTBDemoApp: App {
    @StateObject private var model = DemoViewModel()

    var body: some Scene {
        WindowGroup {
            ContentView(model: model)
        }
    }
}
