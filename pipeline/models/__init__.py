"""Networks whose weights ship inside registry packages: dlib's face ResNet, VGG-Face, Silero VAD."""
