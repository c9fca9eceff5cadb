# Image for docker-compose.yml: the bolt binary plus Ruby for Ruby tasks.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -o /usr/local/bin/bolt ./cmd/bolt

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ruby ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/bolt /usr/local/bin/bolt
