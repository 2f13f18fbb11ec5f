"""Calibration shared by the methods that calibrate: ``layerwise`` runs a recipe step layer by
layer over captured activations · ``hessian`` H = 2XXᵀ and its inverse Cholesky (GPTQ,
SparseGPT) · ``sweep`` the column sweep (C, with a torch reference) · ``gradients`` Fisher and
Taylor statistics."""
