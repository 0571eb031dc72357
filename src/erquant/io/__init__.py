"""Image readers and writers: single images, MetaXpress plate folders, OME-TIFF stacks.

>>> from erquant.io import read_image, scan_plate_folder, load_field, lazy_fields
"""

from erquant.io.plate import (
    lazy_fields,
    load_field,
    metaxpress_name,
    parse_well,
    read_ome_stack,
    scan_plate_folder,
    well_name,
    write_ome_stack,
)
from erquant.io.tiff import read_image, read_image_stack, write_tiff

__all__ = [
    "lazy_fields",
    "load_field",
    "metaxpress_name",
    "parse_well",
    "read_image",
    "read_image_stack",
    "read_ome_stack",
    "scan_plate_folder",
    "well_name",
    "write_ome_stack",
    "write_tiff",
]
