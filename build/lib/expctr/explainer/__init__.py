"""The explainer side of ExpCTR: LLM pairs, rewards (LC, IC), the RL stage runner and rounds."""
