//! The builder: `git push` over smart HTTP, buildpack and Dockerfile builds, image assembly.
//! Nothing is built here yet; its issue comes after the controller's.
