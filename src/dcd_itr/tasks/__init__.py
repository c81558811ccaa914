"""Training tasks: each supplies batches, a step and a validation to :class:`dcd_itr.train.Trainer`."""
