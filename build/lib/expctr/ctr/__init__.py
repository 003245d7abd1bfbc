"""ID-based CTR models (thin nn.Modules returning logits), one shared trainer, a popularity baseline."""
