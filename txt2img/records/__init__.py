"""What an image records of how it was drawn: written into the PNG (`write`), read back
from an image (`read`), and turned into a new run by `--from` (`redraw`)."""
