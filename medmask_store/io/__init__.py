"""Import from and export to other formats: NIfTI, 3D Slicer .seg.nrrd, DICOM SEG, OME-Zarr, SimpleITK images."""
