"""The patient's one-time journey: signed connect links, the SMART launch and its callback."""
