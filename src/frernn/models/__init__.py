"""Network definitions: the layered/graph FRE-RNN and the convolutional variant."""
