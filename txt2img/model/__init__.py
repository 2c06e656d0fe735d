"""The model: what `--model` names (`source`), weights files told from their bytes
(`weights`), loading and placing it (`load`), add-ons and their folders (`addons`,
`folders`), hashes (`hashes`), speed-ups (`fast`) and the sampler table (`schedulers`)."""
