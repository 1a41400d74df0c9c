"""Dataset uploads: what a user may upload, checked against the limits before anything is kept.

An upload is an image archive (.zip, .tar or .tar.gz) or a table (Parquet or UTF-8 CSV), told
apart by their first bytes, never by their names. `store_dataset` keeps it under server-made names:

    {prefix}/manifest.json   what the dataset holds; the original file names live only here
    {prefix}/images.tar      image archives: every image, renamed 000000.png, 000001.jpg, ...
    {prefix}/table.parquet   tables: the parsed, typed table

Images are PNG, JPEG, BMP or GIF by their magic bytes, within GOSHEN_MAX_IMAGE_PIXELS (read from
the header before decoding). Their labels come from a top-level `labels.csv` with columns
`file,label` (`file` as named in the archive, relative to labels.csv), or else from the folder each
image sits in, as torchvision's ImageFolder does: `cat/1.png` is a "cat". One folder wrapping
everything, as zipping a folder makes, is not a label. Images all at the top and no labels.csv
make an unlabeled dataset. Hidden files (`.DS_Store`) and `__MACOSX/` are skipped; every other
file must be an image.
"""
