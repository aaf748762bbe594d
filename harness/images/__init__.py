"""Guest images: the Debian-package build, the public-image catalog, NoCloud seeds."""
