"""The core worker: the JSON-lines server the Blender add-on talks to, and its methods."""
