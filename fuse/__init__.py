"""emofuse stage 2: fusion heads trained from the feature cache."""
