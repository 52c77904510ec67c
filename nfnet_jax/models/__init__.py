"""Model zoo: NFNets, NF-ResNets, NF-RegNets and the BatchNorm ResNet baseline."""
