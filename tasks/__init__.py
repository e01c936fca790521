"""Pipeline steps: each module is a DVC stage's entry point (`python -m tasks.<step>`)."""
