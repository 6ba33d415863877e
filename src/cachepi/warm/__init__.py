"""Warming: filling the cache with what a lock file or a requirements file names, before
the clients that need it ask.

- `lockfiles`: which distribution files a lock names (uv.lock, pylock.toml, poetry.lock,
  pdm.lock, Pipfile.lock, requirements with hashes); pure.
- `narrowing`: which of them a set of targets (platforms, Pythons, implementations) needs;
  pure.
- `matching`: the files of the index's page that a lock's entry names; pure.
- `report`: what a warm job did, as the CLI, `GET /warm/{id}` and the dashboard show it;
  pure.
- `run`: one job's work, through the proxy's own index and file caches.
- `jobs`: jobs running in a process, their reports kept in the metadata store.
- `client`: `cachepi warm` against a running proxy, over `POST /warm`.
- `pip`: plain requirements, resolved by pip downloading through the proxy.
"""
