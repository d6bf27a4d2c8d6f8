"""FLAME-format rigs: the model file and its LBS, the FLAME release reader, subsets, surface binding, deformation gradients, a mesh preview."""
