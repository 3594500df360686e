"""Turn simulated episodes into TRL rows and train LoRA adapters on them (SFT, DPO)."""
