"""A slim trainer that consumes the shards: Wav2Pix (speech → face GAN) and the Speech2Face voice encoder."""
