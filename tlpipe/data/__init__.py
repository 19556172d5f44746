"""The data: scanning folders into a manifest, validation rules, quarantine, versions, demo data."""
