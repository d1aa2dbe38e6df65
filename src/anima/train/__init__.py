"""Training: the one LightningModule, its loss terms, data modules and callbacks."""
