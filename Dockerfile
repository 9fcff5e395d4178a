# kvfetch: the static binary alone in an empty image.
#   docker build -t kvfetch .
#   docker run --rm kvfetch --help
# Build stage: the same script the tests use (glibc, crt-static, LTO, stripped).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cp "$(scripts/build-static)" /kvfetch

# Final stage: nothing but the binary (Mozilla roots are compiled in), as a non-root user.
FROM scratch
COPY --from=build /kvfetch /kvfetch
USER 65532:65532
ENTRYPOINT ["/kvfetch"]
CMD ["--help"]
