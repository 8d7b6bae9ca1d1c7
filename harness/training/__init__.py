"""Training: one configuration trained on one data set (train), its recipe, the tasks' losses and
metrics, CTC, the engines that run a network's steps, and lockstep (several trials at once)."""
