"""`emotalker track`: talking-head videos -> an emotalker-dataset/1 folder (landmarks, FLAME fit, mattes, audio)."""
