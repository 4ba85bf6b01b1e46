"""``python -m lessonlib.exercises --student DIR``: the student version of every lesson."""
from .student import main

raise SystemExit(main())
