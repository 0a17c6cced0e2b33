"""Image pipeline: render Dockerfile.offline, build (docker or buildah), save and verify bundles."""
