"""Evaluation of a finished ExpCTR run: predictor metrics, explanation metrics (faithfulness, stance
agreement, distinct-n), figures and the HTML / Markdown report (stage: `expctr evaluation-report`)."""
