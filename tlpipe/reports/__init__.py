"""What people look at: validation and audit pages, augmentation preview, plots, thumbnails."""
