/* keel gan: trains DCGAN on Fashion-MNIST with a sample grid, checkpoints
 * and a Fréchet distance every epoch. */
#ifndef KEEL_CLI_GAN_H
#define KEEL_CLI_GAN_H

int keel_cli_gan(int argc, char **argv);

#endif
