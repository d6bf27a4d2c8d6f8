"""Training the three stages: Stage 1 (neutral blendshapes), A2E, Stage 2 (emotion), and their losses.

Each stage has one entry point with one signature, `(dataset, avatar_dir, config, device,
progress, resume) -> metrics`: neutral.train_neutral, a2e.train_a2e, emotion.train_emotion;
pipeline.train_all runs the three in turn with one nested TrainAllConfig.
"""
