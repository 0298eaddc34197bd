"""The served system without Ray: request schemas, the request pipeline (served version -> member
scores -> combination -> response), stream state, the error -> HTTP map, settings, and the model
controller (switching, admission, reviews, retraining, operator API) with its router-side follower.

``serve/`` wires these to Ray Serve and Ray actors; nothing here imports Ray.
"""
