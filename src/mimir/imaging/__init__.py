"""Reading exams, fusing stations, and building the 2D representation."""
