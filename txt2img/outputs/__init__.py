"""What a run gives back: files on disk and paths on stdout (`files`), progress on stderr
(`progress`), and the step strips of --save-steps (`steps`)."""
