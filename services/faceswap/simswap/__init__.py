"""SimSwap as published (Chen et al., ACM MM 2020): its networks, checkpoints and face geometry.

One idea per module: `generator` and `arcface` are the networks, `checkpoints` loads the
official files, `detector` finds faces and their five landmarks, `alignment` crops them the
way the official code does, `paste_back` returns the swapped crop to the frame, and `files`
lists what the models directory must hold.
"""
