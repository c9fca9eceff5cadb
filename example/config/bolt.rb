# Boot file: Bolt loads it before each Ruby task, the place to require the application's
# libraries and set up its configuration.
APP_NAME = "Bolt example application"
