"""Pipeline steps: each module holds a plain typed step function and its thin KFP component."""
