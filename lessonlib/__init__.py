"""lessonlib."""
