"""The canary rollout: a traffic router per target, a pure controller, analysis at each step."""
