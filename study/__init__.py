"""Studies: the paper's experiment, its ablations and controls as one config and one resumable command."""
