"""`txt2img serve` and its client: the A1111 API and txt2img's own route (`app`, `a1111`,
`worker`, `catalog`, `security`, `config`), the wire protocol (`wire`), and the
`--server` client (`client`)."""
