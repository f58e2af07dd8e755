package ctbmobile.core

/** The bundle is missing, malformed, or does not match its manifest. The message is one line naming the field or file. */
class BundleException(message: String) : RuntimeException(message)

/** Bad input to the runner (one line). */
class InputException(message: String) : IllegalArgumentException(message)
