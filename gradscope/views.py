"""The views of "the gradient" and the windows of a round, and the one default of each.

Every verb, function, report and notebook takes its default from here, so one file gives
one verdict unless a flag differs (docs/method.md, "One default view and window").
"""
# What population of gradient values a number describes (docs/method.md, "Views").
VIEWS = ("survivors", "all", "relative")
# Which of a round's windows enter it: every window, or those of the round's last epoch.
WINDOWS = ("all", "last")
# The measured gradients of the unpruned weights (view "all" adds sqrt(density) by arithmetic;
# the calibration gate removes it again), over every epoch of the round (the data the round's
# whole max_lr schedule acts on; "last" changes the sign on some data: docs/findings.md).
DEFAULT_VIEW = "survivors"
DEFAULT_WINDOW = "all"
