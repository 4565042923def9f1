"""The message path: the data a message carries (model, reply), the pipeline that runs the checks stage by stage, and the pure policy that turns hits into a verdict."""
