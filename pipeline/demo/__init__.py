"""Media made offline for the demo, the tests and the benchmarks: public-domain photos, espeak-ng speech, ffmpeg."""
