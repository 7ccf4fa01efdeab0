"""emofuse stage 1: corpora, media and frozen encoders into the feature cache."""
