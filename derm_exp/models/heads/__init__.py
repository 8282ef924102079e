"""Heads over a backbone's (B, C, H, W) feature map: simple.SimpleHead, acrnn.ACRNNHead."""
