"""What stage 1 optimises: see :mod:`dreamgs.representations.base` for the seam."""
