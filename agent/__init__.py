"""The deep-learning agent being tuned: data, model, training, export and serving."""
