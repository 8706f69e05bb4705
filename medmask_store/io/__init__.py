"""Import from and export to other file formats (NIfTI)."""
